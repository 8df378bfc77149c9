//! A valid component that does not implement `fnmill:function/event-function`: it exports a
//! different function, so fnmill must refuse to load it.

wit_bindgen::generate!({
    inline: "
        package test:wrong;
        world wrong {
            export run: func() -> u32;
        }
    ",
});

struct Wrong;

impl Guest for Wrong {
    fn run() -> u32 {
        42
    }
}

export!(Wrong);
