use super::*;
use arrow::util::pretty::pretty_format_batches;
use gannet_storage::{DeletePredicate, EngineConfig, Precision};

fn engine(dir: &std::path::Path) -> Arc<Engine> {
    Engine::open(EngineConfig::test_config(dir)).unwrap()
}

async fn show(query: &QueryEngine, db: &str, sql: &str) -> String {
    let batches = query
        .sql(db, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches).unwrap().to_string()
}

#[tokio::test]
async fn queries_see_buffer_and_segments_once_with_the_last_write_winning() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    engine
        .write_lp(
            "m",
            b"cpu,host=a u=1,s=1 10\ncpu,host=b u=5 10",
            Precision::Second,
        )
        .unwrap();
    engine.flush().unwrap();
    engine
        .write_lp(
            "m",
            b"cpu,host=a u=2 10\ncpu,host=a u=3 20",
            Precision::Second,
        )
        .unwrap();
    let query = QueryEngine::new(engine);
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT host, u, s, time FROM cpu ORDER BY host, time"
        )
        .await,
        "+------+-----+-----+---------------------+\n\
         | host | u   | s   | time                |\n\
         +------+-----+-----+---------------------+\n\
         | a    | 2.0 | 1.0 | 1970-01-01T00:00:10 |\n\
         | a    | 3.0 |     | 1970-01-01T00:00:20 |\n\
         | b    | 5.0 |     | 1970-01-01T00:00:10 |\n\
         +------+-----+-----+---------------------+"
    );
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT host, avg(u) AS avg_u FROM cpu GROUP BY host ORDER BY host"
        )
        .await,
        "+------+-------+\n\
         | host | avg_u |\n\
         +------+-------+\n\
         | a    | 2.5   |\n\
         | b    | 5.0   |\n\
         +------+-------+"
    );
}

#[tokio::test]
async fn deleted_rows_are_not_seen() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    engine
        .write_lp(
            "m",
            b"cpu,host=a u=1 1\ncpu,host=b u=2 1",
            Precision::Second,
        )
        .unwrap();
    engine.flush().unwrap();
    let only_a = DeletePredicate {
        tags: vec![("host".into(), "a".into())],
        ..DeletePredicate::all()
    };
    engine.delete("m", "cpu", only_a).unwrap();
    let query = QueryEngine::new(engine);
    assert_eq!(
        show(&query, "m", "SELECT host FROM cpu").await,
        "+------+\n| host |\n+------+\n| b    |\n+------+"
    );
}

#[tokio::test]
async fn a_session_sees_its_own_database_as_postgres_does() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    engine
        .write_lp("m", b"cpu u=1 1", Precision::Second)
        .unwrap();
    engine
        .write_lp("other", b"mem free=7i 1", Precision::Second)
        .unwrap();
    let query = QueryEngine::new(engine);
    assert_eq!(
        show(&query, "m", "SELECT u FROM m.public.cpu").await,
        "+-----+\n| u   |\n+-----+\n| 1.0 |\n+-----+"
    );
    assert_eq!(
        show(&query, "other", "SELECT free FROM public.mem").await,
        "+------+\n| free |\n+------+\n| 7    |\n+------+"
    );
    let tables = show(
        &query,
        "m",
        "SELECT table_catalog, table_schema, table_name FROM information_schema.tables \
         WHERE table_schema <> 'information_schema' ORDER BY 1, 2, 3",
    )
    .await;
    assert_eq!(
        tables,
        "+---------------+--------------+------------+\n\
         | table_catalog | table_schema | table_name |\n\
         +---------------+--------------+------------+\n\
         | m             | public       | cpu        |\n\
         +---------------+--------------+------------+"
    );
    let err = query
        .sql("m", "SELECT * FROM other.public.mem")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("other"), "{err}");

    let err = query
        .sql("m", "SELECT * FROM nope")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    let err = query
        .sql("absent", "SELECT 1")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "database \"absent\" does not exist");
}
