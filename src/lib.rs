//! propetl
