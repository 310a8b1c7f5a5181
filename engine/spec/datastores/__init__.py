"""Corpus datastores shipped with specserve (engine/spec/datastore.py; README.md
says how each was built). `--ngram-datastore auto` serves the one built
over the served model's tokenizer, if any."""
