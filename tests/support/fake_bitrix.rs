//! Fake Bitrix24 REST portal.
