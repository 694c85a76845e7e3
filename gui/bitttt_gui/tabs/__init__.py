"""The launcher's tabs, one module each; they talk only through ``Context.bus``."""
