use super::*;

#[test]
fn tables_get_a_time_column_and_a_sorted_schema() {
    let mut catalog = Catalog::default();
    let table = catalog.table_or_create("db", "cpu").unwrap();
    table.add_column("usage", ColumnType::Float);
    table.add_column("host", ColumnType::Tag);
    table.add_column("az", ColumnType::Tag);
    let names: Vec<String> = table
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["az", "host", "usage", "time"]);
    assert_eq!(table.tag_columns(), ["az", "host"]);
    assert!(catalog.database("db").is_some());
}

#[test]
fn persists_and_loads_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let mut catalog = Catalog::default();
    catalog
        .table_or_create("db", "cpu")
        .unwrap()
        .add_column("v", ColumnType::Integer);
    catalog.version = 3;
    catalog.persist(dir.path()).unwrap();
    assert!(
        !paths::catalog_file(dir.path())
            .with_extension("tmp")
            .exists()
    );
    let loaded = Catalog::load(dir.path()).unwrap();
    assert_eq!(loaded.version, 3);
    let table = loaded.table("db", "cpu").unwrap();
    assert_eq!(table.column_type("v"), Some(ColumnType::Integer));
    assert_eq!(table.schema().fields().len(), 2);
}

#[test]
fn a_missing_catalog_is_empty_and_a_corrupt_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Catalog::load(dir.path()).unwrap().databases.is_empty());
    std::fs::write(
        paths::catalog_file(dir.path()),
        b"{\"format_version\": 1, \"ver",
    )
    .unwrap();
    let err = Catalog::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("catalog.json is not a valid catalog"), "{err}");
}

#[test]
fn names_are_checked() {
    let mut catalog = Catalog::default();
    assert!(catalog.create_database("").is_err());
    assert!(catalog.table_or_create("db", "a\nb").is_err());
    assert!(catalog.table_or_create("db", &"x".repeat(256)).is_err());
}
