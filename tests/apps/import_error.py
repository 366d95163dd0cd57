"""An app module whose import fails: the server must exit 4 naming this module and the error."""

raise ImportError("import_error.py fails on purpose (ferrocorn test)")
