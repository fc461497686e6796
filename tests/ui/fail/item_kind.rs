use propetl::prelude::*;

#[propetl(adapter)]
enum Model { A, B }

#[propetl(adapter)]
union Bits { a: u32, b: f32 }

fn main() {}
