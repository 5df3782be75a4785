"""The one exception type users see: a single line that names the file, topic or field at fault."""


class UserError(Exception):
    """Bad input from the user (file, topic, field, parameter). Printed as one line, non-zero exit.

    Raise it with a message that names what is wrong and where, e.g.
    ``UserError("demo.mcap: topic '/joint_states' not in bag (topics: /tf, /odom)")``.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
