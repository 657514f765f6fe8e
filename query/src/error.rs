//! How query errors reach users: PostgreSQL's SQLSTATE for each DataFusion error, and its
//! message without DataFusion's prefixes, worded as PostgreSQL words the common ones.

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;

use crate::onnx::ModelError;

/// An error of Gannet's own statements, with the SQLSTATE PostgreSQL would give it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    pub sqlstate: &'static str,
    pub message: String,
}

impl SqlError {
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> SqlError {
        SqlError {
            sqlstate,
            message: message.into(),
        }
    }
}

impl From<SqlError> for DataFusionError {
    fn from(e: SqlError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

impl From<SqlError> for crate::QueryError {
    fn from(e: SqlError) -> Self {
        crate::QueryError::DataFusion(e.into())
    }
}

/// The SQLSTATE for a DataFusion error.
pub fn sqlstate(error: &DataFusionError) -> &'static str {
    use datafusion::common::SchemaError;
    match error.find_root() {
        DataFusionError::SQL(..) => "42601",
        DataFusionError::SchemaError(e, _) => match **e {
            SchemaError::FieldNotFound { .. } => "42703",
            SchemaError::AmbiguousReference { .. } => "42702",
            SchemaError::DuplicateQualifiedField { .. }
            | SchemaError::DuplicateUnqualifiedField { .. } => "42701",
        },
        DataFusionError::Plan(message) => {
            if message.starts_with("table '") && message.ends_with("' not found") {
                "42P01"
            } else if message.contains("No function matches")
                || message.contains("Invalid function")
            {
                "42883"
            } else {
                "42000"
            }
        }
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::ArrowError(e, _) => match **e {
            ArrowError::DivideByZero => "22012",
            ArrowError::CastError(_) | ArrowError::ParseError(_) => "22P02",
            ArrowError::ComputeError(_) => "22000",
            _ => "XX000",
        },
        DataFusionError::Execution(message) if message.contains("Divide by zero") => "22012",
        DataFusionError::External(e) => {
            if let Some(e) = e.downcast_ref::<ModelError>() {
                e.sqlstate()
            } else if let Some(e) = e.downcast_ref::<SqlError>() {
                e.sqlstate
            } else {
                "XX000"
            }
        }
        _ => "XX000",
    }
}

/// The message of a DataFusion error without DataFusion's prefixes ("Error during
/// planning: ", ...), worded as PostgreSQL words the common ones.
pub fn message(error: &DataFusionError) -> String {
    match error.find_root() {
        DataFusionError::Plan(message) => match message
            .strip_prefix("table '")
            .and_then(|m| m.strip_suffix("' not found"))
        {
            Some(table) => {
                let name = table.rsplit('.').next().unwrap_or(table);
                format!("relation \"{name}\" does not exist")
            }
            None => message.clone(),
        },
        DataFusionError::SQL(e, _) => e.to_string(),
        DataFusionError::SchemaError(e, _) => e.to_string(),
        DataFusionError::ArrowError(e, _) => match &**e {
            ArrowError::DivideByZero => "division by zero".to_owned(),
            other => other.to_string(),
        },
        DataFusionError::Execution(message) | DataFusionError::NotImplemented(message) => {
            message.clone()
        }
        DataFusionError::External(e) => e.to_string(),
        other => other.to_string(),
    }
}
