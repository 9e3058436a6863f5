"""Configuration: options and ini values into a frozen ``Settings``, model references and aliases,
and the numerics a session asks for."""
