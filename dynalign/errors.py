"""The library's few error types. The CLI turns them into a message and exit code 1; the gateway
turns them into OpenAI-style error bodies. Nothing else catches them."""


class DynalignError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class ConfigError(DynalignError):
    """The config file or an override is invalid."""


class ModelError(DynalignError):
    """The base model cannot be found or prepared."""


class AdapterError(DynalignError):
    """An adapter folder is invalid for the served base model."""


class UnknownVersionError(AdapterError):
    """No adapter version with that number is registered."""


class CopiesRemainError(DynalignError):
    """A deletion is committed, but readers kept the WAL from being checkpointed: copies of the
    deleted text remain in dynalign.db-wal until `dynalign logs checkpoint` succeeds."""


class DataError(DynalignError):
    """A dataset file is missing or malformed."""


class EndpointError(DynalignError):
    """An OpenAI-compatible endpoint refused or failed a request for good."""


class RoundError(DynalignError):
    """A refresh round cannot start, or no round has that id."""


class RoundBusyError(RoundError):
    """A round is already queued or running: rounds never overlap."""

    def __init__(self, message: str, round_id: int):
        super().__init__(message)
        self.round_id = round_id


class UnknownRoundError(RoundError):
    """No round has that id."""


class CanaryError(DynalignError):
    """A canary rollout cannot start here, or an operation conflicts with the running one."""

    def __init__(self, message: str, code: str = "canary_conflict"):
        super().__init__(message)
        self.code = code


class CanaryRunningError(CanaryError):
    """Activating a version while a canary runs: it would change one arm under the comparison."""

    def __init__(self, version: int):
        super().__init__(f"a canary of version {version} is running: promote it (POST "
                         "/admin/canary/promote) or end it (DELETE /admin/canary) first",
                         code="canary_running")


class ReviewError(DynalignError):
    """A review verdict that cannot be taken (dynalign/reviews.py)."""


class UnknownReviewError(ReviewError):
    """No review item has that id."""


class ReviewDecidedError(ReviewError):
    """The review item was decided already: a verdict is given once."""
