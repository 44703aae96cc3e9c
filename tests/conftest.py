"""Suite-wide settings."""

import os

# Files the tests write (configurations, keys) get the modes edge expects of an administrator's
# files: a host whose umask is 002 would make every test config group-writable, and edge refuses
# those (docs/privacy.md). Children (daemons, bridges) inherit it.
os.umask(0o022)
