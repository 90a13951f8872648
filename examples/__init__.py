"""Worked examples of the contributor guide (docs/adding_a_method.md): not installed, run from the repository."""
