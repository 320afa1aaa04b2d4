"""spattn inside model libraries: `spattn.integrations.transformers.register()` makes
"spattn" an attention implementation of Hugging Face transformers."""


def __getattr__(name):
    # loaded on first use: it imports transformers
    if name == "transformers":
        import importlib

        return importlib.import_module(".transformers", __name__)
    raise AttributeError(f"module 'spattn.integrations' has no attribute {name!r}")
