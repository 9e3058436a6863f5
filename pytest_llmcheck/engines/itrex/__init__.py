"""The ``itrex`` engine: Intel Extension for Transformers (ITREX) INT4, in its own Python.

ITREX 1.4.2 is archived and needs an old stack (torch 2.3, transformers 4.40) that
cannot share a process with the plugin. ``env.py`` builds that stack into a virtual
environment in the per-machine cache, ``engine.py`` is the plugin-side engine that
starts ``worker.py`` inside it and talks to it over pipes.
"""
