"""Plugins: C-NMT's built-in plugins, and how to write one of your own.

This package holds the built-in plugins, the modules :data:`cnmt.registry.DEFAULT_PLUGINS`
registers: they wire the subsystems into the component registry (:mod:`cnmt.registry`), and are
the top layer below the command line. Nothing else imports them; everything goes through the
registry. Each hook imports what it registers when it is called.

Writing a plugin
----------------
A plugin is a module with functions named after the hooks in :mod:`cnmt.hookspecs`, each
decorated with ``@cnmt.hookimpl``::

    import cnmt
    from cnmt.schedulers import DevicePolicy

    class SafetyMargin(DevicePolicy):
        name = "safety_margin"
        ...

    @cnmt.hookimpl
    def cnmt_register_device_policies(register):
        register(SafetyMargin)

A third-party distribution announces its plugin module in the ``cnmt`` entry point group::

    [options.entry_points]
    cnmt =
        safety_margin = cnmt_safety_margin

It is loaded when the registry is first built, unless ``CNMT_DISABLE_PLUGIN_AUTOLOAD`` is set
to a non-empty value other than ``0``. ``cnmt plugins`` lists every registered component and
config section. A name must be unique within its kind: a second registration fails and names
both modules. ``plugins/examples/cnmt-safety-margin`` is a complete example distribution.
"""
