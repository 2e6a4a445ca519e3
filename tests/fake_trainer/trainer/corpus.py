"""The stand-in for the real harness's second file (trainer/corpus.py): the default layout's harness
lists it, so a workspace made from this fake trainer needs it, hashed and restored like prepare.py."""
