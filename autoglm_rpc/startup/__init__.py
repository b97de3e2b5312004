"""Starting the service: the `autoglm-rpc` command (`cli`), settings from flags, environment and file
(`config`), the device plan (`devices`), the model source (`model_source`), binding the ports (`binding`), the
server that wires every part together (`server`) and the `health` check (`healthcheck`). Nothing outside this
package imports it."""
