//! Session API.
