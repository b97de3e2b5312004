"""The request core both protocols share, with neither gRPC nor the web framework in it: the plain request and
its events (`requests`), admission (`frontend`), one admitted request's run (`request_run`), the error taxonomy
(`errors`), request ids, and the settings sections each part of the service takes (`config_sections`)."""
