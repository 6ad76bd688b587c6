"""Attack suite (issue 16): placeholder docstring, rewritten below."""
