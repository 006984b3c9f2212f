"""carryon runtime: ships to compute nodes alone (frozen); never imports `packer`."""

__version__ = "0.1.0"
