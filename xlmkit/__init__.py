"""xlmkit: pretrain cross-lingual language models (XLM, XLM-R) and put them to work."""

__version__ = "0.1.0"
