//! Certificates and secured etcd servers for the TLS and auth tests.
