//! Fixtures for `etcd-elector run` (the command-under-the-lock mode).
