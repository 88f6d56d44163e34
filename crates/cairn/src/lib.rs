//! cairn: the embedder's facade and runtime.
