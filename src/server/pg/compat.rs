//! What clients send that DataFusion and datafusion-pg-catalog do not handle as PostgreSQL
//! does: Grafana's search-path subquery, savepoints, `CREATE DATABASE`, and a few functions.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::DataFusionError;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{
    ColumnarValue, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility, create_udf,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser;
use datafusion_postgres::QueryHook;
use datafusion_postgres::hooks::HookClient;
use pgwire::api::ClientInfo;
use pgwire::api::results::{Response, Tag};
use pgwire::error::PgWireResult;

use super::{SERVER_VERSION, SERVER_VERSION_NUM};

/// Grafana lists the tables of the schemas on `search_path` with a subquery that calls a
/// scalar function in FROM (`string_to_array(...) s`), which DataFusion cannot plan.
/// datafusion-pg-catalog 0.19 replaces that subquery with `''`, which empties Grafana's
/// table list. Gannet replaces it first with the same query written with `unnest`, which
/// DataFusion runs. Matching is by tokens, so spacing and case do not matter.
const GRAFANA_SEARCH_PATH: &str = r#"SELECT
        CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
    FROM
        generate_series(
            array_lower(string_to_array(current_setting('search_path'),','),1),
            array_upper(string_to_array(current_setting('search_path'),','),1)
        ) as i,
        string_to_array(current_setting('search_path'),',') s"#;
const GRAFANA_SEARCH_PATH_UNNEST: &str = r#"SELECT
        CASE WHEN trim(p) = '"$user"' THEN current_user ELSE trim(p) END
    FROM unnest(string_to_array(current_setting('search_path'), ',')) AS search_path(p)"#;

pub(super) fn rewrite_grafana_search_path(sql: &str) -> Cow<'_, str> {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::tokenizer::{Token, Tokenizer};

    if !sql.contains("$user") {
        return Cow::Borrowed(sql);
    }
    let tokenize = |sql: &str| Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize();
    let (Ok(tokens), Ok(pattern)) = (tokenize(sql), tokenize(GRAFANA_SEARCH_PATH)) else {
        return Cow::Borrowed(sql);
    };
    let significant = |t: &Token| !matches!(t, Token::Whitespace(_));
    let same = |a: &Token, b: &Token| match (a, b) {
        (Token::Word(a), Token::Word(b)) => a.value.eq_ignore_ascii_case(&b.value),
        (a, b) => a == b,
    };
    let pattern: Vec<&Token> = pattern.iter().filter(|t| significant(t)).collect();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut changed = false;
    while i < tokens.len() {
        // Match the pattern's significant tokens starting at i, skipping whitespace.
        let mut j = i;
        let mut matched = 0;
        while j < tokens.len() && matched < pattern.len() {
            if !significant(&tokens[j]) {
                j += 1;
            } else if same(&tokens[j], pattern[matched]) {
                j += 1;
                matched += 1;
            } else {
                break;
            }
        }
        if matched == pattern.len() && significant(&tokens[i]) {
            out.push_str(GRAFANA_SEARCH_PATH_UNNEST);
            changed = true;
            i = j;
        } else {
            out.push_str(&tokens[i].to_string());
            i += 1;
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(sql)
    }
}

/// Statements DataFusion does not carry out as Gannet means them:
///
/// - `CREATE DATABASE`, Gannet's own, carried out by the query engine;
/// - `SAVEPOINT`, `RELEASE SAVEPOINT` and `ROLLBACK TO SAVEPOINT`, which drivers and ORMs
///   (psycopg, SQLAlchemy) send around their statements. Gannet has no transactions (each
///   write is durable on its own, as in InfluxDB), so like BEGIN and COMMIT they are
///   accepted and do nothing.
#[derive(Debug)]
pub(super) struct GannetStatementsHook {
    pub(super) query: gannet_query::QueryEngine,
    pub(super) notifications: super::notify::Notifications,
}

impl GannetStatementsHook {
    fn savepoint_tag(statement: &sqlparser::ast::Statement) -> Option<&'static str> {
        use sqlparser::ast::Statement;
        match statement {
            Statement::Savepoint { .. } => Some("SAVEPOINT"),
            Statement::ReleaseSavepoint { .. } => Some("RELEASE"),
            Statement::Rollback {
                savepoint: Some(_), ..
            } => Some("ROLLBACK"),
            _ => None,
        }
    }

    fn handles(statement: &sqlparser::ast::Statement) -> bool {
        use sqlparser::ast::Statement;
        Self::savepoint_tag(statement).is_some()
            || matches!(
                statement,
                Statement::CreateDatabase { .. }
                    | Statement::Drop {
                        object_type: sqlparser::ast::ObjectType::Table,
                        ..
                    }
                    | Statement::LISTEN { .. }
                    | Statement::UNLISTEN { .. }
                    | Statement::NOTIFY { .. }
            )
    }

    /// `LISTEN`, `UNLISTEN` and `NOTIFY`, on the connection `client`.
    fn notify(
        &self,
        statement: &sqlparser::ast::Statement,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        use sqlparser::ast::Statement;
        let tag = match statement {
            Statement::LISTEN { channel } => {
                super::notify::listen(client, &channel.value);
                "LISTEN"
            }
            Statement::UNLISTEN { channel } => {
                super::notify::unlisten(client, &channel.value);
                "UNLISTEN"
            }
            Statement::NOTIFY { channel, payload } => {
                self.notifications.publish(super::notify::Notification {
                    database: super::database_of(client).to_owned(),
                    channel: channel.value.clone(),
                    payload: payload.clone().unwrap_or_default(),
                    pid: client.pid_and_secret_key().0,
                });
                "NOTIFY"
            }
            _ => return None,
        };
        Some(Ok(Response::Execution(Tag::new(tag))))
    }

    fn run(
        &self,
        statement: &sqlparser::ast::Statement,
        client: &dyn ClientInfo,
    ) -> Option<PgWireResult<Response>> {
        if let Some(tag) = Self::savepoint_tag(statement) {
            return Some(Ok(Response::Execution(Tag::new(tag))));
        }
        let done = self
            .query
            .execute_own(super::database_of(client), statement)?;
        Some(match done {
            Ok(tag) => Ok(Response::Execution(Tag::new(tag))),
            Err(e) => Err(super::user_error("ERROR", e.sqlstate(), e.message())),
        })
    }
}

#[async_trait]
impl QueryHook for GannetStatementsHook {
    async fn handle_simple_query(
        &self,
        statement: &sqlparser::ast::Statement,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.notify(statement, client)
            .or_else(|| self.run(statement, client))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &sqlparser::ast::Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        // Nothing to plan: the statement is carried out when executed.
        Self::handles(statement).then(|| Ok(super::empty_plan()))
    }

    async fn handle_extended_query(
        &self,
        statement: &sqlparser::ast::Statement,
        _logical_plan: &LogicalPlan,
        _params: &datafusion::common::ParamValues,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.notify(statement, client)
            .or_else(|| self.run(statement, client))
    }
}

/// The PostgreSQL functions clients call that DataFusion and datafusion-pg-catalog lack or
/// answer differently: `current_setting(name)` (Grafana's version probe and table listing,
/// drivers' start-up; unknown names are an error, as in PostgreSQL), `version()`, which
/// drivers parse for "PostgreSQL X.Y", and those SQLAlchemy's reflection calls
/// (`to_regtype`, `json_build_object`, `pg_get_serial_sequence`, `pg_collation_is_visible`).
pub(super) fn register_functions(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(JsonBuildObject::new()));
    // Gannet has no sequences, and no collations beyond the default.
    ctx.register_udf(create_udf(
        "pg_get_serial_sequence",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))),
    ));
    // information_schema.columns as PostgreSQL's (see parse.rs).
    for (name, describe) in [
        (
            "gannet_pg_data_type",
            pg_data_type as fn(&pgwire::api::Type) -> String,
        ),
        ("gannet_pg_udt_name", |ty| ty.name().to_owned()),
    ] {
        ctx.register_udf(create_udf(
            name,
            vec![DataType::Utf8],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(move |args: &[ColumnarValue]| {
                let names = ColumnarValue::values_to_arrays(args)?;
                let names = names[0]
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| {
                        DataFusionError::Plan(format!("{name} takes a text argument"))
                    })?;
                let described: StringArray = names
                    .iter()
                    .map(|arrow| {
                        arrow.map(|arrow| {
                            pg_type_of(arrow).map_or_else(|| arrow.to_owned(), |ty| describe(&ty))
                        })
                    })
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(described)))
            }),
        ));
    }
    // No indexes either: SQLAlchemy's index reflection names the function in a query that
    // finds no rows.
    ctx.register_udf(ScalarUDF::new_from_impl(NullText::new("pg_get_indexdef")));
    ctx.register_udf(create_udf(
        "pg_collation_is_visible",
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))
        }),
    ));
    ctx.register_udf(create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let names = ColumnarValue::values_to_arrays(args)?;
            let names = names[0]
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| DataFusionError::Plan("to_regtype takes a text argument".into()))?;
            let oids: datafusion::arrow::array::Int32Array =
                names.iter().map(|name| name.and_then(type_oid)).collect();
            Ok(ColumnarValue::Array(Arc::new(oids)))
        }),
    ));
    let version = format!(
        "PostgreSQL {SERVER_VERSION} (Gannet {}) on {}-{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    ctx.register_udf(create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                version.clone(),
            ))))
        }),
    ));

    let function = |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
        let names = ColumnarValue::values_to_arrays(args)?;
        let names = names[0]
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| DataFusionError::Plan("current_setting takes a text argument".into()))?;
        let mut out = StringBuilder::with_capacity(names.len(), names.len() * 8);
        for name in names {
            match name {
                None => out.append_null(),
                Some(name) => match setting(name) {
                    Some(value) => out.append_value(value),
                    None => {
                        return Err(DataFusionError::Plan(format!(
                            "unrecognized configuration parameter \"{name}\""
                        )));
                    }
                },
            }
        }
        let array: ArrayRef = Arc::new(out.finish());
        Ok(ColumnarValue::Array(array))
    };
    ctx.register_udf(create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(function),
    ));
}

/// The PostgreSQL type Gannet sends for a column of the Arrow type named `arrow` (as
/// DataFusion's information_schema names it).
fn pg_type_of(arrow: &str) -> Option<pgwire::api::Type> {
    let arrow: DataType = arrow.parse().ok()?;
    datafusion_postgres::arrow_pg::datatypes::into_pg_type(&arrow).ok()
}

/// A type's name as PostgreSQL's `information_schema.columns.data_type` gives it.
fn pg_data_type(ty: &pgwire::api::Type) -> String {
    use pgwire::api::Type;
    // Array types' names start with an underscore: _int8, _text.
    if ty.name().starts_with('_') {
        return "ARRAY".to_owned();
    }
    let name = match *ty {
        Type::BOOL => "boolean",
        Type::INT2 => "smallint",
        Type::INT4 => "integer",
        Type::INT8 => "bigint",
        Type::FLOAT4 => "real",
        Type::FLOAT8 => "double precision",
        Type::TIME => "time without time zone",
        Type::TIMESTAMP => "timestamp without time zone",
        Type::TIMESTAMPTZ => "timestamp with time zone",
        ref other => other.name(),
    };
    name.to_owned()
}

/// A function of any arguments that answers NULL text.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NullText {
    name: &'static str,
    signature: Signature,
}

impl NullText {
    fn new(name: &'static str) -> Self {
        NullText {
            name,
            signature: Signature::variadic_any(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for NullText {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        _args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
    }
}

/// `json_build_object(key, value, ...)`: a JSON object (as text) from alternating keys and
/// values, one per row.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl JsonBuildObject {
    fn new() -> Self {
        JsonBuildObject {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return Err(DataFusionError::Plan(
                "json_build_object takes an even number of arguments (key, value, ...)".into(),
            ));
        }
        let columns = ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = StringBuilder::new();
        for row in 0..args.number_rows {
            let mut object = serde_json::Map::new();
            for pair in columns.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                let value = ScalarValue::try_from_array(&pair[1], row)?;
                object.insert(json_key(&key), json_value(&value));
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

fn json_key(key: &ScalarValue) -> String {
    match key {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.clone(),
        other => other.to_string(),
    }
}

fn json_value(value: &ScalarValue) -> serde_json::Value {
    use serde_json::Value;
    if value.is_null() {
        return Value::Null;
    }
    match value {
        ScalarValue::Boolean(Some(b)) => Value::Bool(*b),
        ScalarValue::Int8(Some(v)) => Value::from(*v),
        ScalarValue::Int16(Some(v)) => Value::from(*v),
        ScalarValue::Int32(Some(v)) => Value::from(*v),
        ScalarValue::Int64(Some(v)) => Value::from(*v),
        ScalarValue::UInt8(Some(v)) => Value::from(*v),
        ScalarValue::UInt16(Some(v)) => Value::from(*v),
        ScalarValue::UInt32(Some(v)) => Value::from(*v),
        ScalarValue::UInt64(Some(v)) => Value::from(*v),
        ScalarValue::Float32(Some(v)) => Value::from(*v),
        ScalarValue::Float64(Some(v)) => Value::from(*v),
        other => Value::String(json_key(other)),
    }
}

/// The OID of a built-in type by any of its names, as `to_regtype` resolves it; `None` for
/// types Gannet does not have (hstore, enums, ...), which drivers probe for.
fn type_oid(name: &str) -> Option<i32> {
    let name = name
        .trim()
        .trim_start_matches("pg_catalog.")
        .to_ascii_lowercase();
    Some(match name.as_str() {
        "bool" | "boolean" => 16,
        "bytea" => 17,
        "char" | "\"char\"" => 18,
        "name" => 19,
        "int8" | "bigint" => 20,
        "int2" | "smallint" => 21,
        "int4" | "integer" | "int" => 23,
        "text" => 25,
        "oid" => 26,
        "json" => 114,
        "float4" | "real" => 700,
        "float8" | "double precision" => 701,
        "varchar" | "character varying" => 1043,
        "date" => 1082,
        "time" | "time without time zone" => 1083,
        "timestamp" | "timestamp without time zone" => 1114,
        "timestamptz" | "timestamp with time zone" => 1184,
        "interval" => 1186,
        "numeric" | "decimal" => 1700,
        "uuid" => 2950,
        "jsonb" => 3802,
        _ => return None,
    })
}

pub(super) fn setting(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "server_version" => SERVER_VERSION,
        "server_version_num" => SERVER_VERSION_NUM,
        "search_path" => "\"$user\", public",
        "timezone" => "UTC",
        "datestyle" => "ISO, MDY",
        "intervalstyle" => "postgres",
        "client_encoding" | "server_encoding" => "UTF8",
        "standard_conforming_strings" => "on",
        "integer_datetimes" => "on",
        "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" => "0",
        "max_identifier_length" => "63",
        "extra_float_digits" => "1",
        "transaction_isolation" | "default_transaction_isolation" => "read committed",
        "transaction_read_only" | "default_transaction_read_only" => "off",
        "is_superuser" => "on",
        "application_name" => "",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_search_path_subquery_is_rewritten_and_nothing_else() {
        let grafana = format!("SELECT 1 WHERE x IN ({GRAFANA_SEARCH_PATH}) AND y = '$user'");
        assert_eq!(
            rewrite_grafana_search_path(&grafana),
            format!("SELECT 1 WHERE x IN ({GRAFANA_SEARCH_PATH_UNNEST}) AND y = '$user'")
        );
        let spaced = grafana.replace("\n", " ").replace("( ", "(");
        assert!(matches!(
            rewrite_grafana_search_path(&spaced),
            Cow::Owned(_)
        ));
        for untouched in ["SELECT user", "SELECT '$user' AS user", "SELECT 1"] {
            assert!(matches!(
                rewrite_grafana_search_path(untouched),
                Cow::Borrowed(_)
            ));
        }
    }

    #[tokio::test]
    async fn json_build_object_builds_one_object_per_row() {
        let ctx = SessionContext::new();
        register_functions(&ctx);
        let batches = ctx
            .sql("SELECT json_build_object('n', v, 'name', 'x', 'none', NULL) AS j FROM (VALUES (1), (2)) AS t(v)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let j = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(j.value(0), r#"{"n":1,"name":"x","none":null}"#);
        assert_eq!(j.value(1), r#"{"n":2,"name":"x","none":null}"#);
    }

    #[test]
    fn settings_clients_ask_for() {
        assert_eq!(setting("server_version_num"), Some(SERVER_VERSION_NUM));
        assert_eq!(setting("TimeZone"), Some("UTC"));
        assert_eq!(setting("no_such_setting"), None);
    }
}

/// Replaces tables of datafusion-pg-catalog's `pg_catalog` schema in `ctx`'s catalog `db`
/// with what is true of Gannet: no indexes (`pg_index`, whose static copy lists
/// PostgreSQL's own system indexes with `indkey` as text, so that SQLAlchemy's
/// `unnest(indkey)` cannot plan). Gannet's tables have no indexes or constraints; its
/// catalogs are not tables with indexes either.
pub(super) fn override_catalog_tables(
    ctx: &SessionContext,
    db: &str,
) -> datafusion::error::Result<()> {
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;

    let Some(catalog) = ctx.catalog(db) else {
        return Ok(());
    };
    let Some(inner) = catalog.schema("pg_catalog") else {
        return Ok(());
    };
    let int2_array = || DataType::List(Arc::new(Field::new_list_field(DataType::Int16, true)));
    let oid_array = || DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)));
    let mut fields = vec![
        Field::new("indexrelid", DataType::Int32, false),
        Field::new("indrelid", DataType::Int32, false),
        Field::new("indnatts", DataType::Int16, false),
        Field::new("indnkeyatts", DataType::Int16, false),
    ];
    for flag in [
        "indisunique",
        "indnullsnotdistinct",
        "indisprimary",
        "indisexclusion",
        "indimmediate",
        "indisclustered",
        "indisvalid",
        "indcheckxmin",
        "indisready",
        "indislive",
        "indisreplident",
    ] {
        fields.push(Field::new(flag, DataType::Boolean, false));
    }
    fields.extend([
        Field::new("indkey", int2_array(), false),
        Field::new("indcollation", oid_array(), false),
        Field::new("indclass", oid_array(), false),
        Field::new("indoption", int2_array(), false),
        Field::new("indexprs", DataType::Utf8, true),
        Field::new("indpred", DataType::Utf8, true),
    ]);
    let pg_index = MemTable::try_new(Arc::new(Schema::new(fields)), vec![vec![]])?;
    let tables = HashMap::from([(
        "pg_index".to_owned(),
        Arc::new(pg_index) as Arc<dyn TableProvider>,
    )]);
    catalog.register_schema("pg_catalog", Arc::new(CatalogOverrides { inner, tables }))?;
    Ok(())
}

/// `pg_class` with the `reloptions` column datafusion-pg-catalog's lacks (SQLAlchemy reads
/// it; Gannet's tables have no storage parameters), as a view.
fn with_reloptions(
    pg_class: Arc<dyn TableProvider>,
) -> datafusion::error::Result<Arc<dyn TableProvider>> {
    use datafusion::arrow::datatypes::Field;
    use datafusion::catalog::view::ViewTable;
    use datafusion::datasource::provider_as_source;
    use datafusion::logical_expr::{LogicalPlanBuilder, col, lit};

    let mut columns: Vec<_> = pg_class
        .schema()
        .fields()
        .iter()
        .map(|field| col(field.name()))
        .collect();
    let text_array = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
    columns.push(lit(ScalarValue::try_from(&text_array)?).alias("reloptions"));
    let plan = LogicalPlanBuilder::scan("pg_class", provider_as_source(pg_class), None)?
        .project(columns)?
        .build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}

/// A schema that answers some tables itself and the rest from another.
#[derive(Debug)]
struct CatalogOverrides {
    inner: Arc<dyn SchemaProvider>,
    tables: HashMap<String, Arc<dyn TableProvider>>,
}

#[async_trait]
impl SchemaProvider for CatalogOverrides {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        let name = name.to_ascii_lowercase();
        if let Some(table) = self.tables.get(&name) {
            return Ok(Some(table.clone()));
        }
        let table = self.inner.table(&name).await?;
        match (name.as_str(), table) {
            ("pg_class", Some(pg_class)) => Ok(Some(with_reloptions(pg_class)?)),
            (_, table) => Ok(table),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}
