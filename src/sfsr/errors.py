"""User-facing errors.

Every error a user can cause (bad config, bad image, bad checksum, missing file) is raised as a
subclass of :class:`SfsrError` with a message that names the file, key or value and suggests a fix.
The CLI and the workflow scripts print such messages without a traceback and exit non-zero.
"""


class SfsrError(Exception):
    """Base class for errors caused by user input; the message is meant for the user."""


class ConfigError(SfsrError):
    """The configuration is invalid (names the key and its location)."""


class DataError(SfsrError):
    """A dataset, folder or file is missing or malformed."""


class ChecksumError(DataError):
    """A downloaded file does not match its expected checksum."""


class ImageError(DataError):
    """An image cannot be read or is not usable under the image policy (names the file)."""
