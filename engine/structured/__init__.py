"""Structured outputs (response_format): grammars compiled with xgrammar and
enforced as a mask on the target's and the drafters' distributions."""
