"""Test utilities shipped with the package (the chaos benchmark uses them at run time)."""
