//! The operator's error type.

/// Why a reconcile or the operator itself failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline failed (database, schema, encoding).
    #[error(transparent)]
    Reconcile(#[from] countersign_reconcilers::Error),
    /// The Kubernetes API refused or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// A deletion cannot proceed yet; the object's status says why.
    #[error("deletion refused for now; see the object's conditions")]
    DeletionRefused,
    /// A precondition for starting does not hold.
    #[error("{0}")]
    Startup(String),
    /// The controllers stopped without being asked to (the leader lease was
    /// lost, or a watch they need ended).
    #[error("the controllers stopped: the leader lease was lost or a watch ended")]
    Stopped,
}

impl Error {
    /// The CamelCase reason used as the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Reconcile(e) => e.reason(),
            Self::Kube(_) => "KubernetesApiError",
            Self::Finalizer(_) => "FinalizerFailed",
            Self::Startup(_) => "StartupFailed",
            Self::DeletionRefused => "DeletionRefused",
            Self::Stopped => "Stopped",
        }
    }
}
