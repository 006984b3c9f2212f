"""The small set of carryon errors, mapped to exit codes at the CLI edge (docker run's codes)."""


class CarryonError(Exception):
    """carryon's own failure (bad flags, bad input, missing rootfs, engine failure): exit 125."""

    exit_code = 125


class InputError(CarryonError):
    """Bad input given to the packer or extractor (not an image, missing blob, digest mismatch): exit 1."""

    exit_code = 1


class CommandNotExecutable(CarryonError):
    """The guest command exists but cannot be executed: exit 126."""

    exit_code = 126


class CommandNotFound(CarryonError):
    """The guest command does not exist in the guest: exit 127."""

    exit_code = 127
