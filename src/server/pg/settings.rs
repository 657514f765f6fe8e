//! A connection's own DataFusion settings.
//!
//! Connections to one database share its DataFusion session. `SET datafusion.<option> =
//! value` changes the option for the connection that sends it, as PostgreSQL's `SET` does:
//! the value is checked, kept in the connection's metadata, and applied to a copy of the
//! session's state for each of its statements. A connection that sets nothing uses the
//! shared session as it is.
//!
//! `SHOW` of a PostgreSQL setting answers what the connection set, or the server's value
//! (the one `current_setting` gives), and an unknown name is an error, as in PostgreSQL.

use std::borrow::Cow;
use std::sync::Arc;

use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Expr, Set, Statement, Value};
use pgwire::api::ClientInfo;
use pgwire::api::Type;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::PgWireResult;

use super::user_error;

/// The metadata keys a connection's settings are kept under, before the option's name.
const PREFIX: &str = "gannet.set.";

/// The option `statement` sets, if it sets a DataFusion option, and the values given.
fn setting(statement: &Statement) -> Option<(String, &[Expr])> {
    let Statement::Set(Set::SingleAssignment {
        hivevar: false,
        variable,
        values,
        ..
    }) = statement
    else {
        return None;
    };
    let name = variable.to_string().to_ascii_lowercase();
    name.starts_with("datafusion.")
        .then_some((name, values.as_slice()))
}

/// Whether `statement` shows a DataFusion option, which DataFusion answers (from the
/// connection's session) rather than the hooks, which answer PostgreSQL's.
pub(super) fn is_show(statement: &Statement) -> bool {
    matches!(statement, Statement::ShowVariable { variable }
        if variable.first().is_some_and(|part| part.value.eq_ignore_ascii_case("datafusion")))
}

/// Whether `statement` sets a DataFusion option.
pub(super) fn is_set(statement: &Statement) -> bool {
    setting(statement).is_some()
}

/// Carries out `statement` if it sets a DataFusion option.
pub(super) fn set(
    statement: &Statement,
    context: &SessionContext,
    client: &mut (impl ClientInfo + ?Sized),
) -> Option<PgWireResult<Response>> {
    let (name, values) = setting(statement)?;
    let [value] = values else {
        return Some(Err(user_error(
            "ERROR",
            "22023",
            format!("SET {name} takes one value"),
        )));
    };
    let value = match value {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    };
    let mut options = context.state().config_options().as_ref().clone();
    if !options.entries().iter().any(|entry| entry.key == name) {
        return Some(Err(user_error(
            "ERROR",
            "42704",
            format!("unrecognized configuration parameter \"{name}\""),
        )));
    }
    if options.set(&name, &value).is_err() {
        return Some(Err(user_error(
            "ERROR",
            "22023",
            format!("invalid value for parameter \"{name}\": \"{value}\""),
        )));
    }
    client
        .metadata_mut()
        .insert(format!("{PREFIX}{name}"), value);
    Some(Ok(Response::Execution(Tag::new("SET"))))
}

/// The settings the connection has made its own, as one string: equal for connections
/// that set the same values.
pub(super) fn fingerprint(client: &(impl ClientInfo + ?Sized)) -> String {
    let mut set: Vec<(&str, &String)> = client
        .metadata()
        .iter()
        .filter_map(|(key, value)| Some((key.strip_prefix(PREFIX)?, value)))
        .collect();
    set.sort();
    set.iter()
        .map(|(name, value)| format!("{name}={value}\n"))
        .collect()
}

/// The session `client`'s statements run in: `shared`, with the options the connection
/// has set.
pub(super) fn session_for<'a>(
    client: &(impl ClientInfo + ?Sized),
    shared: &'a Arc<SessionContext>,
) -> PgWireResult<Cow<'a, Arc<SessionContext>>> {
    let mut set = client
        .metadata()
        .iter()
        .filter_map(|(key, value)| Some((key.strip_prefix(PREFIX)?, value)))
        .peekable();
    if set.peek().is_none() {
        return Ok(Cow::Borrowed(shared));
    }
    let mut state = shared.state();
    for (name, value) in set {
        state
            .config_mut()
            .options_mut()
            .set(name, value)
            .map_err(super::api_error)?;
    }
    Ok(Cow::Owned(Arc::new(SessionContext::new_with_state(state))))
}

/// Answers `statement` if it shows a PostgreSQL setting.
pub(super) fn show(
    statement: &Statement,
    client: &(impl ClientInfo + ?Sized),
) -> Option<PgWireResult<Response>> {
    let Statement::ShowVariable { variable } = statement else {
        return None;
    };
    let words: Vec<String> = variable
        .iter()
        .map(|part| part.value.to_ascii_lowercase())
        .collect();
    let name = match words.as_slice() {
        [time, zone] if time == "time" && zone == "zone" => "timezone".to_owned(),
        [a, b, c] if a == "transaction" && b == "isolation" && c == "level" => {
            "transaction_isolation".to_owned()
        }
        [name] if name != "all" && name != "datafusion" => name.clone(),
        _ => return None,
    };
    let metadata = client.metadata();
    let set = if name == "statement_timeout" {
        metadata
            .get("statement_timeout_ms")
            .map(|ms| format!("{ms}ms"))
    } else {
        metadata
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(&name))
            .map(|(_, value)| value.clone())
    };
    let Some(value) = set.or_else(|| super::compat::setting(&name).map(str::to_owned)) else {
        return Some(Err(user_error(
            "ERROR",
            "42704",
            format!("unrecognized configuration parameter \"{name}\""),
        )));
    };
    // The column is named as PostgreSQL spells the setting.
    let column = match name.as_str() {
        "timezone" => "TimeZone",
        "datestyle" => "DateStyle",
        "intervalstyle" => "IntervalStyle",
        other => other,
    };
    let fields = Arc::new(vec![FieldInfo::new(
        column.to_owned(),
        None,
        None,
        Type::TEXT,
        FieldFormat::Text,
    )]);
    let mut encoder = DataRowEncoder::new(fields.clone());
    Some(encoder.encode_field(&Some(value)).map(|()| {
        let row = encoder.take_row();
        let rows = futures::stream::once(async move { Ok(row) });
        Response::Query(QueryResponse::new(fields, Box::pin(rows)))
    }))
}
