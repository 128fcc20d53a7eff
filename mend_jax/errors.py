"""User-facing errors. The CLI prints their message (no traceback); each names the problem and the fix."""


class MendJaxError(Exception):
    """Base class of errors caused by user input (bad names, files, arguments), not by bugs."""


class ModelNotFoundError(MendJaxError):
    pass


class WeightFileError(MendJaxError):
    pass


class UnsupportedModelError(MendJaxError, ValueError):
    pass


class InputTooLongError(MendJaxError, ValueError):
    pass


class InvalidEditError(MendJaxError, ValueError):
    pass


class CheckpointError(MendJaxError):
    pass
