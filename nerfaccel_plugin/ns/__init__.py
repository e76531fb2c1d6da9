"""The Nerfstudio glue: samplers, the model and its fields, dataparsers, the trainer config and distributed training.

Only this subpackage imports nerfstudio; the nerfacc-compatible core beneath it (``nerfaccel_plugin.*``) does not.
Modules that lived at ``nerfaccel_plugin.models`` etc. before still import under those names
(:mod:`nerfaccel_plugin._moved`), so older ``config.yml`` files load.
"""
