//! Call tracking: the pure state machine from AMI events to Bitrix24 intents.
