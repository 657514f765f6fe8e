use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, DictionaryArray, Float32Array, Float64Array, Int16Array,
    Int32Array, Int64Array, LargeStringArray, RecordBatch, StringArray, StringViewArray,
    TimestampMicrosecondArray, TimestampNanosecondArray, TimestampSecondArray,
};
use arrow::datatypes::{Field, Int32Type, Schema};
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use pgwire::api::portal::Format;
use pgwire::types::format::FormatOptions;
use proptest::prelude::*;

use super::encode_batch;

/// A column of one of the types encoded here, with NULLs.
fn column(rows: usize) -> impl Strategy<Value = ArrayRef> {
    let nullable = |len: usize| proptest::collection::vec(any::<bool>(), len);
    let floats = prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-0.0),
        Just(1e-310),
        -1e6f64..1e6,
    ];
    let text = "[a-zé\"\\\\,{} ]{0,6}";
    // Times from 1900 to 2200, in nanoseconds.
    let nanos = -2_208_988_800_000_000_000i64..7_258_118_400_000_000_000;
    prop_oneof![
        proptest::collection::vec(proptest::option::of(floats), rows)
            .prop_map(|v| Arc::new(Float64Array::from(v)) as ArrayRef),
        proptest::collection::vec(proptest::option::of(any::<f32>()), rows)
            .prop_map(|v| Arc::new(Float32Array::from(v)) as ArrayRef),
        proptest::collection::vec(proptest::option::of(any::<i64>()), rows)
            .prop_map(|v| Arc::new(Int64Array::from(v)) as ArrayRef),
        proptest::collection::vec(proptest::option::of(any::<i32>()), rows)
            .prop_map(|v| Arc::new(Int32Array::from(v)) as ArrayRef),
        proptest::collection::vec(proptest::option::of(any::<i16>()), rows)
            .prop_map(|v| Arc::new(Int16Array::from(v)) as ArrayRef),
        proptest::collection::vec(proptest::option::of(any::<bool>()), rows)
            .prop_map(|v| Arc::new(BooleanArray::from(v)) as ArrayRef),
        proptest::collection::vec(proptest::option::of(text), rows)
            .prop_map(|v| Arc::new(StringArray::from(v)) as ArrayRef),
        proptest::collection::vec(proptest::option::of(text), rows)
            .prop_map(|v| Arc::new(LargeStringArray::from(v)) as ArrayRef),
        proptest::collection::vec(proptest::option::of(text), rows)
            .prop_map(|v| Arc::new(StringViewArray::from(v)) as ArrayRef),
        proptest::collection::vec(proptest::option::of(-100_000i32..100_000), rows)
            .prop_map(|v| Arc::new(Date32Array::from(v)) as ArrayRef),
        proptest::collection::vec(proptest::option::of(nanos.clone()), rows)
            .prop_map(|v| Arc::new(TimestampNanosecondArray::from(v)) as ArrayRef),
        proptest::collection::vec(proptest::option::of(nanos.clone()), rows).prop_map(|v| {
            let micros: Vec<_> = v.into_iter().map(|t| t.map(|t| t / 1000)).collect();
            Arc::new(TimestampMicrosecondArray::from(micros).with_timezone("Europe/Paris"))
                as ArrayRef
        }),
        proptest::collection::vec(proptest::option::of(nanos), rows).prop_map(|v| {
            let seconds: Vec<_> = v
                .into_iter()
                .map(|t| t.map(|t| t / 1_000_000_000))
                .collect();
            Arc::new(TimestampSecondArray::from(seconds).with_timezone("+05:30")) as ArrayRef
        }),
        // Tags: a dictionary whose values may be NULL or unused, keys NULL or not.
        (
            proptest::collection::vec(proptest::option::of(text), 1..5),
            proptest::collection::vec(any::<u8>(), rows),
            nullable(rows),
        )
            .prop_map(|(values, keys, nulls)| {
                let n = values.len() as u8;
                let keys: Vec<Option<i32>> = keys
                    .into_iter()
                    .zip(nulls)
                    .map(|(k, null)| (!null).then_some((k % n) as i32))
                    .collect();
                let dictionary = DictionaryArray::<Int32Type>::try_new(
                    keys.into(),
                    Arc::new(StringArray::from(values)),
                )
                .unwrap();
                Arc::new(dictionary) as ArrayRef
            }),
    ]
}

fn batch() -> impl Strategy<Value = RecordBatch> {
    (0usize..20)
        .prop_flat_map(|rows| proptest::collection::vec(column(rows), 1..6))
        .prop_map(|columns| {
            let fields: Vec<Field> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    // As Gannet's tables mark their columns.
                    Field::new(format!("c{i}"), c.data_type().clone(), true).with_metadata(
                        std::collections::HashMap::from([(
                            "gannet.kind".to_owned(),
                            "field".to_owned(),
                        )]),
                    )
                })
                .collect();
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
        })
}

fn options() -> impl Strategy<Value = FormatOptions> {
    (
        prop_oneof![
            Just("ISO, YMD"),
            Just("ISO, DMY"),
            Just("German"),
            Just("SQL, MDY")
        ],
        -15i8..4,
    )
        .prop_map(|(date_style, extra_float_digits)| {
            let mut options = FormatOptions::default();
            options.date_style = date_style.to_owned();
            options.extra_float_digits = extra_float_digits;
            options
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Every row is byte for byte what arrow-pg sends, in text and binary.
    #[test]
    fn rows_are_encoded_as_arrow_pg_encodes_them(
        batch in batch(),
        binary in proptest::collection::vec(any::<bool>(), 6),
        options in options(),
    ) {
        let formats = (0..batch.num_columns())
            .map(|i| i16::from(binary[i]))
            .collect();
        let fields = Arc::new(
            arrow_schema_to_pg_fields(
                &batch.schema(),
                &Format::Individual(formats),
                Some(Arc::new(options)),
            )
            .unwrap(),
        );
        let expected: Vec<_> = encode_recordbatch(fields.clone(), batch.clone())
            .collect::<Result<_, _>>()
            .unwrap();
        let actual = encode_batch(&batch, &fields).expect("every column type is encoded here");
        prop_assert_eq!(actual.unwrap(), expected);
    }
}

#[test]
fn a_dictionary_of_no_values_goes_to_arrow_pg() {
    // As a tag column that a write lacks is filled: every key NULL, no values.
    let tags = arrow::array::new_null_array(
        &arrow::datatypes::DataType::Dictionary(
            Box::new(arrow::datatypes::DataType::Int32),
            Box::new(arrow::datatypes::DataType::Utf8),
        ),
        3,
    );
    let batch = RecordBatch::try_from_iter([("tag", tags)]).unwrap();
    let fields = arrow_schema_to_pg_fields(&batch.schema(), &Format::UnifiedText, None).unwrap();
    assert!(encode_batch(&batch, &fields).is_none());
}

#[test]
fn other_types_and_fields_with_metadata_go_to_arrow_pg() {
    let list =
        arrow::array::ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1)])]);
    let batch = RecordBatch::try_from_iter([("l", Arc::new(list) as ArrayRef)]).unwrap();
    let fields = arrow_schema_to_pg_fields(&batch.schema(), &Format::UnifiedText, None).unwrap();
    assert!(encode_batch(&batch, &fields).is_none());

    let field = Field::new("c", arrow::datatypes::DataType::Int32, true).with_metadata(
        std::collections::HashMap::from([("pg.oid_alias".to_owned(), "oid".to_owned())]),
    );
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![field])),
        vec![Arc::new(Int32Array::from(vec![7]))],
    )
    .unwrap();
    let fields = arrow_schema_to_pg_fields(&batch.schema(), &Format::UnifiedBinary, None).unwrap();
    assert!(encode_batch(&batch, &fields).is_none());
}
