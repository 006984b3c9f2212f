"""carryon packer: read container images, squash their layers, write carryon archives."""
