"""spattn inside model libraries: `spattn.integrations.transformers.register()` makes
"spattn" an attention implementation of Hugging Face transformers."""
