//! Bitrix24 REST: transport, typed methods, user directory.
