//! Placeholder (being written).

/// Placeholder.
#[derive(Debug, Clone, Default)]
pub struct TcpProbe;
