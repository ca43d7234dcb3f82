//! AMI connection client (see issue "Foundation").
