//! Grouping by a tag through a string view of it.
//!
//! Tags are dictionary-encoded. DataFusion groups by several keys with vectorized group
//! values (each key in a column of its own type, compared column by column) only when
//! every key is a primitive, string, binary or boolean type; one dictionary key sends
//! the whole key to the row format, which encodes every row of every batch into bytes
//! and compares those (double-groupby-all, by hour and host: about a quarter of its time). So
//! [`GroupTagsAsViews`] groups by `CAST(tag AS Utf8View)` instead, a cast that builds
//! each value's view once per batch and gathers them by key, and casts the output
//! groups back to the dictionary type, leaving the aggregate's schema as it was.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{Aggregate, Expr, ExprSchemable, LogicalPlan, Projection, cast};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// Groups by tags (string dictionary columns) as string views, see the module's docs.
#[derive(Debug, Default)]
pub struct GroupTagsAsViews;

impl OptimizerRule for GroupTagsAsViews {
    fn name(&self) -> &str {
        "gannet_group_tags_as_views"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = plan else {
            return Ok(Transformed::no(plan));
        };
        let Some(tags) = tags_to_view(&aggregate)? else {
            return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate)));
        };
        let group_expr = aggregate
            .group_expr
            .iter()
            .map(|expr| match expr {
                Expr::Column(c) if tags.contains(c) => cast(expr.clone(), DataType::Utf8View)
                    .alias_qualified(c.relation.clone(), c.name.clone()),
                _ => expr.clone(),
            })
            .collect();
        let grouped = Aggregate::try_new(
            aggregate.input.clone(),
            group_expr,
            aggregate.aggr_expr.clone(),
        )?;
        // Back to the schema the plan above was built on: group keys come first.
        let columns = grouped
            .schema
            .columns()
            .into_iter()
            .zip(aggregate.schema.fields())
            .map(|(column, field)| {
                let expr = Expr::Column(column.clone());
                if tags.contains(&column) {
                    cast(expr, field.data_type().clone())
                        .alias_qualified(column.relation.clone(), column.name.clone())
                } else {
                    expr
                }
            })
            .collect();
        let projection = Projection::try_new_with_schema(
            columns,
            Arc::new(LogicalPlan::Aggregate(grouped)),
            aggregate.schema.clone(),
        )?;
        Ok(Transformed::yes(LogicalPlan::Projection(projection)))
    }
}

/// The group keys of `aggregate` worth grouping as string views: plain columns of string
/// dictionaries, when every other key has vectorized group values and no aggregate
/// function reads them or orders by anything (selectors such as `first_value(x ORDER BY
/// tag, time)` are recognised by their group keys, see [`crate::latest`]).
fn tags_to_view(aggregate: &Aggregate) -> Result<Option<Vec<Column>>> {
    let schema = aggregate.input.schema();
    let mut tags = Vec::new();
    for expr in &aggregate.group_expr {
        let data_type = match expr {
            Expr::GroupingSet(_) => return Ok(None),
            _ => expr.get_type(schema)?,
        };
        match (expr, &data_type) {
            (Expr::Column(c), DataType::Dictionary(_, value))
                if matches!(value.as_ref(), DataType::Utf8) =>
            {
                tags.push(c.clone())
            }
            _ if vectorized(&data_type) => {}
            _ => return Ok(None),
        }
    }
    if tags.is_empty() {
        return Ok(None);
    }
    for expr in &aggregate.aggr_expr {
        let mut touches = false;
        expr.apply(|e| {
            touches |= match e {
                Expr::Column(c) => tags.contains(c),
                Expr::AggregateFunction(f) => !f.params.order_by.is_empty(),
                _ => false,
            };
            Ok(if touches {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })?;
        if touches {
            return Ok(None);
        }
    }
    Ok(Some(tags))
}

/// Whether DataFusion groups by a key of this type column by column.
fn vectorized(data_type: &DataType) -> bool {
    data_type.is_primitive()
        || matches!(
            data_type,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::Boolean
        )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{DictionaryArray, Float64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    /// Two batches whose dictionaries give the same tags other keys, with NULL tags.
    fn sessions() -> (SessionContext, SessionContext) {
        let tag = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", tag.clone(), true),
            Field::new("dc", tag, true),
            Field::new("b", DataType::Float64, false),
            Field::new("u", DataType::Float64, true),
        ]));
        let batch = |hosts: Vec<Option<&str>>, dcs: Vec<Option<&str>>, bs: Vec<f64>| {
            let u: Float64Array = (0..bs.len()).map(|i| Some(i as f64)).collect();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(hosts.into_iter().collect::<DictionaryArray<Int32Type>>()),
                    Arc::new(dcs.into_iter().collect::<DictionaryArray<Int32Type>>()),
                    Arc::new(Float64Array::from(bs)),
                    Arc::new(u),
                ],
            )
            .unwrap()
        };
        let batches = vec![
            batch(
                vec![Some("a"), Some("b"), None, Some("a")],
                vec![Some("x"), Some("x"), Some("y"), None],
                vec![1.0, 1.0, 2.0, 2.0],
            ),
            batch(
                vec![Some("b"), Some("a"), None, Some("c")],
                vec![Some("y"), Some("x"), Some("y"), Some("x")],
                vec![1.0, 1.0, 2.0, 1.0],
            ),
        ];
        let table = Arc::new(MemTable::try_new(schema.clone(), vec![batches]).unwrap());
        let plain = SessionContext::new();
        let state = SessionStateBuilder::new().with_default_features().build();
        let ours = SessionContext::new_with_state(crate::planner::install(state));
        for ctx in [&plain, &ours] {
            ctx.register_table("t", table.clone()).unwrap();
        }
        (plain, ours)
    }

    #[tokio::test]
    async fn tags_group_as_views_with_the_same_rows_and_schema() {
        let (plain, ours) = sessions();
        for sql in [
            "SELECT b, host, sum(u), count(*) FROM t GROUP BY b, host ORDER BY b, host",
            "SELECT host, dc, avg(u) FROM t GROUP BY host, dc ORDER BY host, dc",
            "SELECT dc FROM t GROUP BY dc ORDER BY dc",
            "SELECT host, count(*) FROM t GROUP BY host HAVING host <> 'b' ORDER BY host",
            "SELECT * FROM (SELECT b, host, max(u) AS m FROM t GROUP BY b, host) \
             WHERE host = 'a' OR host IS NULL ORDER BY b, host",
        ] {
            let plan = ours.sql(sql).await.unwrap().into_optimized_plan().unwrap();
            assert!(
                plan.display_indent().to_string().contains("AS Utf8View)"),
                "{sql}: {}",
                plan.display_indent()
            );
            let expected = plain.sql(sql).await.unwrap().collect().await.unwrap();
            let got = ours.sql(sql).await.unwrap().collect().await.unwrap();
            assert_eq!(got[0].schema(), expected[0].schema(), "{sql}");
            assert_eq!(
                pretty_format_batches(&got).unwrap().to_string(),
                pretty_format_batches(&expected).unwrap().to_string(),
                "{sql}"
            );
        }
    }

    #[tokio::test]
    async fn tags_read_by_an_aggregate_or_with_an_order_stay_dictionaries() {
        let (_, ours) = sessions();
        for sql in [
            "SELECT host, max(host) FROM t GROUP BY host",
            "SELECT host, first_value(u ORDER BY b) FROM t GROUP BY host",
            // A key of a type the rule does not know to be grouped column by column.
            "SELECT host, make_array(u), count(*) FROM t GROUP BY host, make_array(u)",
            "SELECT host, count(*) FROM t GROUP BY ROLLUP (host)",
        ] {
            let plan = ours.sql(sql).await.unwrap().into_optimized_plan().unwrap();
            assert!(
                !plan.display_indent().to_string().contains("Utf8View"),
                "{sql}: {}",
                plan.display_indent()
            );
        }
    }
}
