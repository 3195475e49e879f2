"""One API call's life: the download handler that adds the token
(``handler``), the gate that admits it within the account's limit, the 439
pause and the budget (``gate``, with the budget's scheduler), the adaptive
rule of that limit (``ceiling``) and its memory across crawls (``limits``),
the middleware that acts on each answer (``answers``), answers paid for kept
(``paid``), and the HTTP cache policy (``cache``)."""
