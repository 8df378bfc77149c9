//! Contract: validates an order (JSON); malformed → `fatal`, invalid → `invalid` with `reasons`, valid → `valid` enriched with `item_count`, `subtotal`, `tax`, `total` (config `tax_rate`, default 0.20).

pub mod order;

#[cfg(target_arch = "wasm32")]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "event-function",
    });

    use crate::order::{self, Outcome};
    use exports::fnmill::function::handler::Guest;
    use fnmill::function::config;
    use fnmill::function::logging::{self, Level};
    use fnmill::function::types::{Error, Event, Header, Output};

    struct QuickstartOrders;

    impl Guest for QuickstartOrders {
        fn handle(event: Event) -> Result<Vec<Output>, Error> {
            let tax_rate = config::get("tax_rate");
            let outcome = match order::process(&event.payload, tax_rate.as_deref()) {
                Ok(outcome) => outcome,
                Err(err) => {
                    logging::log(Level::Debug, &format!("event {}: {err}", event.id));
                    // Neither a malformed order nor a bad `tax_rate` gets better by retrying.
                    return Err(Error::Fatal(err.to_string()));
                }
            };
            let (destination, body) = match outcome {
                Outcome::Valid {
                    order_id,
                    total,
                    body,
                } => {
                    logging::log(
                        Level::Debug,
                        &format!(
                            "event {}: order {order_id} valid, total {total:.2}",
                            event.id
                        ),
                    );
                    ("valid", body)
                }
                Outcome::Invalid {
                    order_id,
                    reasons,
                    body,
                } => {
                    logging::log(
                        Level::Debug,
                        &format!(
                            "event {}: order {order_id} invalid: {}",
                            event.id,
                            reasons.join("; ")
                        ),
                    );
                    ("invalid", body)
                }
            };
            // Keep the event's headers (e.g. `traceparent`), but the body is now our JSON.
            let mut headers: Vec<Header> = event
                .headers
                .into_iter()
                .filter(|h| !h.name.eq_ignore_ascii_case("content-type"))
                .collect();
            headers.push(Header {
                name: "content-type".to_string(),
                value: b"application/json".to_vec(),
            });
            Ok(vec![Output {
                destination: destination.to_string(),
                key: event.key,
                payload: body,
                headers,
            }])
        }
    }

    export!(QuickstartOrders);
}
