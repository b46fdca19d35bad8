//! placeholder until the macro pipeline lands
