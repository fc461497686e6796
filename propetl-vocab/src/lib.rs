//! The ProPETL vocabulary (filled in by the vocabulary work).
