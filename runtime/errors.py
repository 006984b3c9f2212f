"""The small set of carryon errors, mapped to exit codes at the CLI edge (docker run's codes).

The rule, the same for every `carryon` subcommand and for archives: 125 when carryon itself fails
(bad usage or option, bad input, I/O error, anything carryon refuses); 126/127 only for a guest command
that cannot be executed / is not found; otherwise the command's own status (`exec`, archives) or the
subcommand's result (`sweep`: 1 when some row failed)."""


class CarryonError(Exception):
    """carryon's own failure (bad flags, bad input, missing rootfs, engine failure): exit 125."""

    exit_code = 125


class InputError(CarryonError):
    """Bad input given to the packer, extractor or sweep (not an image, missing blob, digest mismatch, bad
    table): carryon refuses it, exit 125 like every other carryon failure."""


class CommandNotExecutable(CarryonError):
    """The guest command exists but cannot be executed: exit 126."""

    exit_code = 126


class CommandNotFound(CarryonError):
    """The guest command does not exist in the guest: exit 127."""

    exit_code = 127
