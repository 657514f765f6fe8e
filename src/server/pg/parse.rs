//! Parsing SQL from Postgres clients.
//!
//! datafusion-pg-catalog's parser makes the catalog queries of psql, pgcli, DBeaver and
//! friends plannable: it swaps whole queries DataFusion cannot run for equivalents, and
//! replaces correlated scalar subqueries in a projection, which DataFusion cannot plan
//! there, with NULL. The second is right for catalog lookups (the default, collation or
//! identity of a column Gannet does not have) and wrong for anything else: on Gannet's own
//! tables it would answer a valid query with NULLs. So statements that read no catalog get
//! the parser's other rewrites only, and DataFusion plans (or refuses) their subqueries.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, CaseWhen, Expr, ObjectName, Query, SelectItem, Set, SetExpr, Statement,
    TableFactor, Value, Visit, VisitMut, Visitor, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion_pg_catalog::pg_catalog::PG_CATALOG_TABLES;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_pg_catalog::sql::rules::{
    AliasDuplicatedProjectionRewrite, CurrentUserVariableToSessionUserFunctionCall,
    FixArrayLiteral, FixVersionColumnName, PrependUnqualifiedPgTableName,
    ResolveUnqualifiedIdentifier, RewriteArrayAnyAllOperation, RewritePgCatalogOperator,
    RewriteRegCastToSubquery, SqlStatementRewriteRule, StripCallableQualifier, StripCollate,
};

#[derive(Debug)]
pub(super) struct SqlParser {
    catalog: PostgresCompatibilityParser,
    rules: Vec<Arc<dyn SqlStatementRewriteRule>>,
}

impl Default for SqlParser {
    fn default() -> Self {
        SqlParser {
            catalog: PostgresCompatibilityParser::new(),
            // PostgresCompatibilityParser's rules in its order, without
            // RemoveSubqueryFromProjection.
            rules: vec![
                Arc::new(AliasDuplicatedProjectionRewrite),
                Arc::new(ResolveUnqualifiedIdentifier),
                Arc::new(RewriteArrayAnyAllOperation),
                Arc::new(PrependUnqualifiedPgTableName),
                Arc::new(StripCallableQualifier),
                Arc::new(FixArrayLiteral),
                Arc::new(CurrentUserVariableToSessionUserFunctionCall),
                Arc::new(StripCollate),
                Arc::new(RewritePgCatalogOperator),
                Arc::new(RewriteRegCastToSubquery::new()),
                Arc::new(FixVersionColumnName),
            ],
        }
    }
}

impl SqlParser {
    /// The statements of `sql`, rewritten for DataFusion.
    pub(super) fn parse(&self, sql: &str) -> Result<Vec<Statement>, ParserError> {
        let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
            Ok(statements) if !statements.iter().any(reads_catalog) => statements
                .into_iter()
                .map(|s| self.rules.iter().fold(s, |s, rule| rule.rewrite(s)))
                .collect(),
            // Catalog queries, and what only the catalog parser's substitutions make
            // parseable (`ABORT`, for one).
            _ => {
                let mut statements = self.catalog.parse(sql)?;
                for statement in &mut statements {
                    let _ = statement.visit(&mut NullCorrelatedSubqueries);
                    let _ = statement.visit(&mut GenerateSubscripts);
                    let _ = statement.visit(&mut InformationSchemaColumns);
                }
                statements
            }
        };
        Ok(statements.into_iter().map(set_time_zone).collect())
    }
}

/// `SET timezone = 'x'` as `SET TIME ZONE 'x'`, which is what it means in PostgreSQL: the
/// connection's time zone. Left as an assignment, it went to DataFusion, which took it for
/// its `datafusion.execution.time_zone` and set it in the session that all the database's
/// connections share.
fn set_time_zone(statement: Statement) -> Statement {
    match statement {
        Statement::Set(Set::SingleAssignment {
            hivevar: false,
            variable,
            mut values,
            ..
        }) if values.len() == 1 && variable.to_string().eq_ignore_ascii_case("timezone") => {
            Statement::Set(Set::SetTimeZone {
                local: false,
                value: values.remove(0),
            })
        }
        other => other,
    }
}

/// Whether `statement` reads a table of `pg_catalog` or `information_schema`.
fn reads_catalog(statement: &Statement) -> bool {
    struct Relations(bool);
    impl Visitor for Relations {
        type Break = ();
        fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
            let parts: Vec<String> = name
                .0
                .iter()
                .filter_map(|part| part.as_ident())
                .map(|ident| ident.value.to_ascii_lowercase())
                .collect();
            let catalog = match parts.as_slice() {
                [table] => PG_CATALOG_TABLES.contains(&table.as_str()),
                [.., schema, _] => schema == "pg_catalog" || schema == "information_schema",
                [] => false,
            };
            if catalog {
                self.0 = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut relations = Relations(false);
    let _ = statement.visit(&mut relations);
    relations.0
}

/// Replaces the correlated scalar subqueries anywhere in a catalog query's projection
/// (datafusion-pg-catalog replaces those that are a whole select item) with NULL.
/// SQLAlchemy's column reflection asks for each column's default, identity options and
/// collation this way, inside CASE; Gannet's columns have none of them.
struct NullCorrelatedSubqueries;

impl VisitorMut for NullCorrelatedSubqueries {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_mut() {
            for item in &mut select.projection {
                if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } = item
                {
                    let _ = expr.visit(&mut NullIfCorrelated);
                }
            }
        }
        ControlFlow::Continue(())
    }
}

struct NullIfCorrelated;

impl VisitorMut for NullIfCorrelated {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Subquery(query) = expr
            && correlated(query)
        {
            *expr = null_keeping_placeholders(query);
        }
        ControlFlow::Continue(())
    }
}

/// NULL, as an expression that still names the placeholders (`$n`) of `query`: parameters
/// are matched to placeholders by position, so one that vanished from the statement would
/// shift the types of those after it.
fn null_keeping_placeholders(query: &Query) -> Expr {
    struct Placeholders(Vec<Expr>);
    impl Visitor for Placeholders {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if let Expr::Value(value) = expr
                && matches!(value.value, Value::Placeholder(_))
            {
                self.0.push(Expr::IsNull(Box::new(expr.clone())));
            }
            ControlFlow::Continue(())
        }
    }
    let null = Expr::Value(Value::Null.into());
    let mut placeholders = Placeholders(Vec::new());
    let _ = query.visit(&mut placeholders);
    let Some(condition) = placeholders.0.into_iter().reduce(|a, b| Expr::BinaryOp {
        left: Box::new(a),
        op: BinaryOperator::And,
        right: Box::new(b),
    }) else {
        return null;
    };
    Expr::Case {
        case_token: AttachedToken::empty(),
        end_token: AttachedToken::empty(),
        operand: None,
        conditions: vec![CaseWhen {
            condition,
            result: null.clone(),
        }],
        else_result: Some(Box::new(null)),
    }
}

/// `information_schema.columns` as PostgreSQL's: DataFusion's names Arrow types
/// (`Dictionary(Int32, Utf8)`, `Float64`) and counts columns from 0. Grafana's column list
/// and other tools show `data_type`; they get the PostgreSQL type Gannet sends for the
/// column, numbered from 1, and `udt_name` besides.
struct InformationSchemaColumns;

const INFORMATION_SCHEMA_COLUMNS: &str = "(SELECT table_catalog, table_schema, table_name, \
    column_name, ordinal_position + 1 AS ordinal_position, column_default, is_nullable, \
    gannet_pg_data_type(data_type) AS data_type, character_maximum_length, \
    character_octet_length, numeric_precision, numeric_precision_radix, numeric_scale, \
    datetime_precision, interval_type, gannet_pg_udt_name(data_type) AS udt_name \
    FROM information_schema.columns)";

impl VisitorMut for InformationSchemaColumns {
    type Break = ();

    // After the children: the replacement reads the original, which must stay as it is.
    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table { name, alias, .. } = factor else {
            return ControlFlow::Continue(());
        };
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|part| part.as_ident())
            .map(|ident| ident.value.to_ascii_lowercase())
            .collect();
        if !matches!(parts.as_slice(), [.., schema, table] if schema == "information_schema" && table == "columns")
        {
            return ControlFlow::Continue(());
        }
        // An alias displays with its AS, if it was written with one.
        let alias = alias.as_ref().map_or_else(
            || "columns".to_owned(),
            |alias| alias.to_string().trim_start_matches("AS ").to_owned(),
        );
        let sql = format!("SELECT * FROM {INFORMATION_SCHEMA_COLUMNS} AS {alias}");
        if let Ok(Statement::Query(query)) = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&sql)
            .and_then(|mut p| p.parse_statement())
            && let SetExpr::Select(select) = *query.body
            && let Some(from) = select.from.into_iter().next()
        {
            *factor = from.relation;
        }
        ControlFlow::Continue(())
    }
}

/// `generate_subscripts(array, dim)`, a set-returning function DataFusion lacks (SQLAlchemy
/// numbers index columns with it, next to `unnest`), as the `unnest` of the list of
/// subscripts, which DataFusion zips with the other `unnest`s of the projection as
/// PostgreSQL does.
struct GenerateSubscripts;

impl VisitorMut for GenerateSubscripts {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        use datafusion::sql::sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments};
        let Expr::Function(function) = expr else {
            return ControlFlow::Continue(());
        };
        let named = function
            .name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .is_some_and(|ident| ident.value.eq_ignore_ascii_case("generate_subscripts"));
        let FunctionArguments::List(list) = &function.args else {
            return ControlFlow::Continue(());
        };
        let args: Vec<&Expr> = list
            .args
            .iter()
            .filter_map(|arg| match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect();
        if let ([array, dim], true) = (args.as_slice(), named) {
            let sql = format!("unnest(generate_series(1, array_length({array}, {dim})))");
            if let Ok(replacement) = Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&sql)
                .and_then(|mut parser| parser.parse_expr())
            {
                *expr = replacement;
            }
        }
        ControlFlow::Continue(())
    }
}

/// Whether `query` names a column by a table qualifier none of its own relations has.
fn correlated(query: &Query) -> bool {
    struct Names(Vec<String>);
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table { name, alias, .. } = factor {
                if let Some(alias) = alias {
                    self.0.push(alias.name.value.to_ascii_lowercase());
                }
                if let Some(last) = name.0.last().and_then(|part| part.as_ident()) {
                    self.0.push(last.value.to_ascii_lowercase());
                }
            }
            ControlFlow::Continue(())
        }
    }
    struct Qualifiers<'a>(&'a [String], bool);
    impl Visitor for Qualifiers<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if let Expr::CompoundIdentifier(idents) = expr
                && idents.len() >= 2
            {
                let table = idents[idents.len() - 2].value.to_ascii_lowercase();
                if !self.0.contains(&table) {
                    self.1 = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut names = Names(Vec::new());
    let _ = query.visit(&mut names);
    let mut qualifiers = Qualifiers(&names.0, false);
    let _ = query.visit(&mut qualifiers);
    qualifiers.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(sql: &str) -> String {
        SqlParser::default()
            .parse(sql)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }

    #[test]
    fn subqueries_over_user_tables_are_left_to_datafusion() {
        let sql = "SELECT host, (SELECT max(c2.usage) FROM cpu AS c2 WHERE c2.host = cpu.host) AS m FROM cpu";
        assert_eq!(parsed(sql), sql);
        let sql = "SELECT (SELECT max(usage) FROM cpu) AS m";
        assert_eq!(parsed(sql), sql);
    }

    #[test]
    fn catalog_queries_get_the_catalog_rewrites() {
        // A correlated subquery in a CASE of a catalog query (SQLAlchemy's column
        // reflection) becomes NULL; the uncorrelated one stays.
        let sql = "SELECT a.attname, CASE WHEN a.atthasdef THEN (SELECT d.adbin FROM pg_catalog.pg_attrdef AS d \
                   WHERE d.adrelid = a.attrelid) ELSE NULL END AS def, \
                   (SELECT max(oid) FROM pg_catalog.pg_type) AS t FROM pg_catalog.pg_attribute AS a";
        let out = parsed(sql);
        assert!(
            out.contains("CASE WHEN a.atthasdef THEN NULL ELSE NULL END AS def"),
            "{out}"
        );
        assert!(
            out.contains("(SELECT max(oid) FROM pg_catalog.pg_type LIMIT 1) AS t"),
            "{out}"
        );
        // information_schema.columns names PostgreSQL's types; an alias stays.
        let out = parsed("SELECT c.data_type FROM information_schema.columns AS c");
        assert!(
            out.starts_with("SELECT c.data_type FROM (SELECT table_catalog")
                && out.contains("gannet_pg_data_type(data_type) AS data_type")
                && out.ends_with("FROM information_schema.columns) AS c"),
            "{out}"
        );
        // Unqualified catalog names count, and ABORT (a token substitution) still parses.
        assert!(reads_catalog(
            &Parser::parse_sql(&PostgreSqlDialect {}, "SELECT * FROM pg_class").unwrap()[0]
        ));
        assert_eq!(parsed("ABORT"), "ROLLBACK");
    }

    #[test]
    fn set_timezone_is_the_connections_time_zone() {
        for sql in [
            "SET timezone = 'Asia/Tokyo'",
            "SET TimeZone TO 'Asia/Tokyo'",
        ] {
            let statements = SqlParser::default().parse(sql).unwrap();
            assert!(
                matches!(
                    &statements[..],
                    [Statement::Set(Set::SetTimeZone { local: false, .. })]
                ),
                "{sql}: {statements:?}"
            );
        }
        assert_eq!(
            parsed("SET datafusion.execution.batch_size = 7"),
            "SET datafusion.execution.batch_size = 7"
        );
    }
}
