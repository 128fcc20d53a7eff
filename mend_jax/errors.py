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


class UnknownLayerError(MendJaxError, KeyError):
    """A layer name that is not a linear layer of the model."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def unknown_layers(missing, available) -> UnknownLayerError:
    names = sorted(available)
    return UnknownLayerError(f"these layers are not linear layers of the model: {list(missing)}; use names like "
                             f"{names[:3]} (the model has {len(names)} linear layers)")
