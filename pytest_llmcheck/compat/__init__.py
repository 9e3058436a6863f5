"""Adapters over other packages' private APIs: the only modules that use them.

Where a library gives no public way to do what the plugin needs, the private name is
used in exactly one small module here, one per library, and ``tests/test_compat.py``
checks each against the installed library, failing with the pinned range from
``pyproject.toml`` when a release moves it. ``tests/test_layout.py`` keeps such names
out of every other module. Each adapter imports its library only inside its functions
(or is itself imported only where the library is already needed), so importing one is
as cheap as before.
"""
