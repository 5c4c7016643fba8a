"""`UserError`: a failure the user caused and can fix (a bad setting, a missing file, weights
not downloaded). Its message names the file or key and the fault; the `finecap` command prints
it as one line and exits 2, without a traceback. Every such error class derives from it."""


class UserError(Exception):
    """A failure with a message a user can act on; no traceback needed."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (or is not what it should be)."""
