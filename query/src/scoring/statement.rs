//! The SQL that makes and drops scoring rules, parsed with sqlparser's parser (its
//! expressions are SQL expressions, parsed as any other):
//!
//! ```sql
//! CREATE SCORING RULE [IF NOT EXISTS] name ON table
//!     USING expression               -- the score, e.g. onnx_predict('fraud', amount, risk)
//!     [WHERE condition]              -- which scores are alerts, over `score` and the row
//!     [WITH (webhook = 'url')]       -- where alerts are also POSTed
//! DROP SCORING RULE [IF EXISTS] name
//! ```

use datafusion::sql::sqlparser::ast::{Expr, Ident};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

/// A scoring-rule statement.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoringStatement {
    Create {
        name: String,
        if_not_exists: bool,
        table: String,
        expression: Box<Expr>,
        condition: Option<Box<Expr>>,
        webhook: Option<String>,
    },
    Drop {
        name: String,
        if_exists: bool,
    },
}

/// Parses `sql` if it is a scoring-rule statement: `None` for any other statement (or text
/// that is not SQL), an error for a scoring-rule statement that is malformed.
pub fn parse(sql: &str) -> Option<Result<ScoringStatement, String>> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql).ok()?;
    let create = if parser.parse_keyword(Keyword::CREATE) {
        true
    } else if parser.parse_keyword(Keyword::DROP) {
        false
    } else {
        return None;
    };
    if !(word(&mut parser, "SCORING") && word(&mut parser, "RULE")) {
        return None;
    }
    let statement = if create {
        parse_create(&mut parser)
    } else {
        parse_drop(&mut parser)
    };
    Some(
        statement
            .and_then(|statement| {
                let _ = parser.consume_token(&Token::SemiColon);
                match parser.peek_token().token {
                    Token::EOF => Ok(statement),
                    other => Err(ParserError::ParserError(format!(
                        "unexpected {other} after the scoring rule"
                    ))),
                }
            })
            .map_err(|e| match e {
                ParserError::ParserError(message) | ParserError::TokenizerError(message) => message,
                other => other.to_string(),
            }),
    )
}

/// Consumes the bare word `expected` (case-insensitive) if it is next.
fn word(parser: &mut Parser<'_>, expected: &str) -> bool {
    match parser.peek_token().token {
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(expected) => {
            parser.next_token();
            true
        }
        _ => false,
    }
}

fn name(ident: Ident) -> String {
    ident.value
}

fn parse_create(parser: &mut Parser<'_>) -> Result<ScoringStatement, ParserError> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let rule = name(parser.parse_identifier()?);
    parser.expect_keyword_is(Keyword::ON)?;
    let table = name(parser.parse_identifier()?);
    parser.expect_keyword_is(Keyword::USING)?;
    let expression = Box::new(parser.parse_expr()?);
    let condition = if parser.parse_keyword(Keyword::WHERE) {
        Some(Box::new(parser.parse_expr()?))
    } else {
        None
    };
    let mut webhook = None;
    if parser.parse_keyword(Keyword::WITH) {
        parser.expect_token(&Token::LParen)?;
        loop {
            let option = parser.parse_identifier()?;
            parser.expect_token(&Token::Eq)?;
            let value = parser.parse_literal_string()?;
            match option.value.to_ascii_lowercase().as_str() {
                "webhook" => webhook = Some(value),
                other => {
                    return Err(ParserError::ParserError(format!(
                        "unknown scoring rule option {other}; the options are: webhook"
                    )));
                }
            }
            if !parser.consume_token(&Token::Comma) {
                break;
            }
        }
        parser.expect_token(&Token::RParen)?;
    }
    Ok(ScoringStatement::Create {
        name: rule,
        if_not_exists,
        table,
        expression,
        condition,
        webhook,
    })
}

fn parse_drop(parser: &mut Parser<'_>) -> Result<ScoringStatement, ParserError> {
    let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let name = name(parser.parse_identifier()?);
    Ok(ScoringStatement::Drop { name, if_exists })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(sql: &str) -> (String, String, String, Option<String>, Option<String>) {
        match parse(sql).expect("a scoring statement").expect("valid") {
            ScoringStatement::Create {
                name,
                table,
                expression,
                condition,
                webhook,
                ..
            } => (
                name,
                table,
                expression.to_string(),
                condition.map(|c| c.to_string()),
                webhook,
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_rules_with_and_without_their_optional_parts() {
        assert_eq!(
            create(
                "CREATE SCORING RULE fraud ON payments USING onnx_predict('fraud', amount, \
                 merchant_risk) WHERE score > 0.9 WITH (webhook = 'http://hooks/a');"
            ),
            (
                "fraud".to_owned(),
                "payments".to_owned(),
                "onnx_predict('fraud', amount, merchant_risk)".to_owned(),
                Some("score > 0.9".to_owned()),
                Some("http://hooks/a".to_owned()),
            )
        );
        let (_, table, expression, condition, webhook) = create(
            "create scoring rule \"Odd\" on \"My Table\" using onnx_predict_output('m', 'scores', a) * 2",
        );
        assert_eq!(table, "My Table");
        assert_eq!(expression, "onnx_predict_output('m', 'scores', a) * 2");
        assert_eq!((condition, webhook), (None, None));
        assert_eq!(
            parse("DROP SCORING RULE IF EXISTS fraud").unwrap().unwrap(),
            ScoringStatement::Drop {
                name: "fraud".to_owned(),
                if_exists: true
            }
        );
    }

    #[test]
    fn other_statements_are_not_scoring_rules() {
        for sql in [
            "SELECT 1",
            "CREATE TABLE t (a int)",
            "DROP TABLE scoring",
            "CREATE DATABASE scoring",
            "not sql at all '",
        ] {
            assert!(parse(sql).is_none(), "{sql}");
        }
    }

    #[test]
    fn malformed_rules_say_what_is_wrong() {
        let error = |sql: &str| parse(sql).unwrap().unwrap_err();
        assert!(error("CREATE SCORING RULE r payments USING f(x)").contains("ON"));
        assert!(error("CREATE SCORING RULE r ON payments WHERE x > 1").contains("USING"));
        assert!(
            error("CREATE SCORING RULE r ON t USING f(x) WITH (color = 'red')")
                .contains("unknown scoring rule option color")
        );
        assert!(error("CREATE SCORING RULE r ON t USING f(x) LIMIT 3").contains("LIMIT"));
    }
}
