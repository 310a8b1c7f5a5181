"""The real engine client and the test fake both satisfy engine.interface.EngineClient.

Method names, signatures (parameter names, kinds, defaults, annotations),
calling style (coroutine, async iterator, plain) and attribute types are
compared, so a change to one that the other does not follow fails here.
"""
from __future__ import annotations

import inspect
import typing
from collections.abc import AsyncIterator

import pytest

from engine.client import AsyncEngineClient
from engine.interface import EngineClient, PromptTokenizer
from engine.tokenizer import Tokenizer
from tests.server.conftest import real_engine_client
from tests.server.fake_engine import FakeEngineClient, FakeTokenizer


@pytest.fixture(scope="module")
def engine_client(tmp_path_factory):
    """The real engine client (not started: only its surface is read)."""
    return real_engine_client(tmp_path_factory)


def _methods(protocol: type) -> dict[str, typing.Any]:
    return {name: value for name, value in vars(protocol).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))}


def _style(function: typing.Any) -> str:
    if inspect.iscoroutinefunction(function):
        return "coroutine"
    returns = inspect.signature(function, eval_str=True).return_annotation
    if inspect.isasyncgenfunction(function) or typing.get_origin(returns) is AsyncIterator:
        return "async iterator"
    return "plain"


def _normal(annotation: typing.Any) -> typing.Any:
    """typing.AsyncIterator[X] and collections.abc.AsyncIterator[X] are the same type."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return annotation
    return origin, tuple(_normal(arg) for arg in typing.get_args(annotation))


def _check_signature(name: str, declared: typing.Any, implemented: typing.Any) -> None:
    """`implemented` accepts every call `declared` allows, and returns the same type."""
    want = inspect.signature(declared, eval_str=True)
    got = inspect.signature(implemented, eval_str=True)
    wanted, given = list(want.parameters.values()), list(got.parameters.values())
    assert [(p.name, p.kind, p.default, _normal(p.annotation)) for p in wanted] == \
        [(p.name, p.kind, p.default, _normal(p.annotation)) for p in given[:len(wanted)]], name
    extra = [p for p in given[len(wanted):]
             if p.default is inspect.Parameter.empty
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not extra, f"{name}: extra required parameters {extra}"
    assert _normal(got.return_annotation) == _normal(want.return_annotation), name
    assert _style(implemented) == _style(declared), name


def check_conforms(cls: type, protocol: type) -> None:
    """Every method and property of `protocol` exists on `cls` with a matching signature."""
    for name, declared in _methods(protocol).items():
        implemented = inspect.getattr_static(cls, name, None)
        assert implemented is not None, f"{cls.__name__} lacks {name}"
        if isinstance(declared, property):
            assert isinstance(implemented, property), f"{cls.__name__}.{name} is no property"
            declared, implemented = declared.fget, implemented.fget
        _check_signature(f"{cls.__name__}.{name}", declared, implemented)


def check_attributes(instance: typing.Any, protocol: type) -> None:
    """The protocol's data attributes exist on `instance` with the declared types."""
    for name, kind in typing.get_type_hints(protocol).items():
        assert hasattr(instance, name), f"{type(instance).__name__} lacks {name}"
        assert isinstance(getattr(instance, name), kind), (name, getattr(instance, name))


@pytest.mark.parametrize("cls", [AsyncEngineClient, FakeEngineClient])
def test_engine_client_methods_match_the_protocol(cls):
    check_conforms(cls, EngineClient)


@pytest.mark.parametrize("cls", [Tokenizer, FakeTokenizer])
def test_tokenizer_methods_match_the_protocol(cls):
    check_conforms(cls, PromptTokenizer)


def test_engine_client_attributes(engine_client):
    for client in (engine_client, FakeEngineClient()):
        check_attributes(client, EngineClient)
        assert isinstance(client, EngineClient)
        assert 0 < client.vocab_size and 1 < client.max_model_len


def test_real_client_limits_come_from_the_engine(engine_client):
    engine = engine_client.engine
    assert engine_client.max_model_len == engine.max_model_len
    assert engine_client.kv_cache_tokens == engine.config.cache.num_tokens
    assert engine_client.vocab_size == min(engine.model_config.vocab_size,
                                           engine.tokenizer.vocab_size)


# A drift must fail the checks above, or they prove nothing.

class _RenamedParameter(FakeEngineClient):
    def generate(self, request_id, prompt_ids, params):  # prompt_token_ids renamed
        return super().generate(request_id, prompt_ids, params)


class _NotAsync(FakeEngineClient):
    def abort(self, request_id: str) -> None:  # a coroutine in the protocol
        self.aborted.append(request_id)


class _ExtraRequired(FakeEngineClient):
    def stats(self, detail):
        return super().stats()


@pytest.mark.parametrize("cls", [_RenamedParameter, _NotAsync, _ExtraRequired])
def test_drift_is_caught(cls):
    with pytest.raises(AssertionError):
        check_conforms(cls, EngineClient)


def test_missing_attribute_is_caught():
    fake = FakeEngineClient()
    del fake.kv_cache_tokens
    with pytest.raises(AssertionError):
        check_attributes(fake, EngineClient)
